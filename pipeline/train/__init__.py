"""Training students from the teacher cache: params, the loop over cached batches, checkpoints, logging.

`train_student(name, params, prepared_dir, out_dir, scratch_dir, seeds=None, progress=True,
threads=None)` is the entry point of the `train` stage and of the Dask sweep (pipeline/train/run.py).
"""
