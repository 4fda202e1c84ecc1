"""girder against Celery, Dask, Ray and arq on one machine: `python -m benchmarks.compare`."""
