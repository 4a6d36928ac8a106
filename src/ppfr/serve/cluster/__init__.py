"""The recognition service on a Ray cluster: replicated embedding, sharded galleries.

One machine holds a few million protected templates and scans them at about 0.5 s per
query per million; embedding costs about 20 ms per representation. This package spreads
both over a Ray cluster while keeping the single-process service's API:

- :mod:`~ppfr.serve.cluster.shard`: K shard actors, each holding partition ``i`` of K of
  every gallery (all templates of a subject on one shard) in a
  :class:`ppfr.serve.matching.Matcher` loaded from the durable store; Ray restarts a lost
  shard on a surviving node and it reloads from the store.
- :mod:`~ppfr.serve.cluster.matcher`: :class:`ShardedMatcher`, the service's matcher:
  identify fans out to every shard and merges their top-k (:mod:`.merge`); verify asks the
  subject's shard; a lost shard means 503, never a partial answer.
- :mod:`~ppfr.serve.cluster.service`: R Ray Serve replicas of the same FastAPI app
  (:func:`ppfr.serve.app.create_app`), and ``ppfr serve --cluster``.

Writes go from a replica straight to the store (committed before they are acknowledged);
the shards apply them when the store's version says they are behind, so a write is
visible to the next request. docs/deployment.md ("More than one machine") has the setup.

Importing this package imports Ray (the ``cluster`` extra); the rest of ppfr never does.
"""
