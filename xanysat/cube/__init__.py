"""xarray cubes in, embeddings out: read and prepare any input once, the grid, the per-worker
model runtime, embed, points, plan, Zarr stores, predict and maps.
"""
