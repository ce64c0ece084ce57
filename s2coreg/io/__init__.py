"""Reading: Sentinel-2 products and rasters onto a grid (``products``), images and valid masks
(``imaging``), georeference and ground metres (``geo``), data where it lives — URLs, STAC,
content keys (``remote``). No torch here."""
