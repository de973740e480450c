"""The teacher cache: the one door to zarr, pyarrow and polars (docs/cache_format.md).

Shared by every part
    batch.py          TeacherBatch, SparseLogits, SPLITS: what code outside this package sees
    params.py         CacheParams (the `cache:` section of params.yaml)
    format.py         array names, CacheLayout, cache.json (CacheMetadata), plan_shards, array_path,
                      StaleCacheError, IncompleteCacheError, CacheCorruptError

Build (teacher -> store)
    teacher_outputs.py  run the teacher; check every output follows the batch (probed on two batch
                      sizes, then every batch), NaN/Inf, float16 range; probe_layout
    build.py          CacheBuild in its scratch directory: create_store / open_build, progress
                      records, finalize (the completion marker last)
    shards.py         compute_shard / commit_shard / write_shard: one shard, whole
    reference.py      reference rows: fp32 logits kept to measure the stored dtype's error
    plan.py           plan_build / finish_build, shared by both build paths; BuildResult
    writer.py         build_cache: the single-process build (inference overlapped with writing);
                      pipeline/cluster/sharded_cache.py is the Dask one

Stores (one protocol, a table by name)
    store.py          the Store protocol, STORES (name -> class), store_class / open_store
    zarr_store.py     ZarrStore: sharded Zarr v3, zstd + crc32c, whole-shard writes
    parquet_store.py  ParquetStore: one Parquet file per shard, page checksums

Readers (store -> batches)
    reader.py         CacheReader protocol, ArrayCache (the one batch()), MemoryCache,
                      iter_batches, rows_of_split, block_shuffle
    open.py           open_cache: refusals, cache.json checked against the store, verification;
                      in RAM, memory-mapped or lazy
    lazy.py           LazyCache: gathers per batch from a store that reads rows (Zarr)
    mmap_store.py     MmapCache: an uncompressed, verified .npy sidecar for caches too big for RAM
    alignment.py      check_alignment / CacheAlignmentError: does the dataset match the cache?
    sparse.py         the top-k form and KL error of any stored form
    report.py         cache_report and plots (the `inspect` view)
    view_report.py    a view cache's report: the figures on its originals, plus a `views` block
"""
