"""The teacher cache: the one door to zarr, pyarrow and polars (docs/cache_format.md).

batch.py          TeacherBatch, SparseLogits, SPLITS: what code outside this package sees
reader.py         CacheReader protocol, MemoryCache, iter_batches, rows_of_split, block_shuffle
params.py         CacheParams (the `cache:` section of params.yaml)
format.py         array names, CacheLayout, cache.json (CacheMetadata), plan_shards,
                  StaleCacheError, IncompleteCacheError, CacheCorruptError
zarr_store.py     ZarrStore: sharded Zarr v3, zstd + crc32c, whole-shard writes
parquet_store.py  ParquetStore: one Parquet file per shard, page checksums
writer.py         build_cache (resumable, overlapped), create_store / write_shard / finalize
open.py           open_cache (refusals, verification; in RAM, memory-mapped or lazy), check_alignment
mmap_store.py     MmapCache: an uncompressed, verified .npy sidecar for caches too big for RAM
sparse.py         the top-k form and KL error of any stored form
report.py         cache_report and plots (the `inspect` view)
"""
