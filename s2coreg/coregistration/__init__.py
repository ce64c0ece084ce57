"""Co-registration: the engine every run shares (``engine``: dates on a grid, windows, window
measurements, combination, σ, provenance, outputs, the output folder), a pair (``pair``), a time
series' dates from what a user gives (``dates``), the series on Dask (``stack``), what a stack writes (``outputs``) and keeps for the next run
(``cache``)."""
