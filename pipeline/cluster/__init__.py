"""Dask runners: many students as tasks, and sharded teacher inference (docs/cluster.md).

params.py         the `cluster:` section (local | slurm | pbs | address) and `sweep:`
engine.py         open_client(params): start or connect to the engine, stop what was started
runner.py         run_tasks(cluster, tasks): futures, progress, failure isolation, GPU resources
sweep.py          sweep_students(...): one train_student task per student
sharded_cache.py  build_cache_sharded / build_cache_on_cluster: whole shards per worker

Nothing is imported here, so `import pipeline.cluster.params` does not pay for distributed.
"""
