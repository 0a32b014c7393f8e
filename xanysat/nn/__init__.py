"""Pure torch: layers, projectors, the AnySat encoder, task heads, checkpoints, the hub and the
model card. Never imports xarray or dask.
"""
