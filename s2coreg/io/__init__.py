"""Reading: Sentinel-2 products recognised and described, their bands onto a grid (``products``),
a raster file read onto a grid (``grid``), images and valid masks (``imaging``), georeference and
ground metres (``geo``), data where it lives — URLs, STAC, content keys (``remote``). No torch
here. (Stage 1, which writes the preprocessed images, is ``s2coreg.preprocess``.)"""
