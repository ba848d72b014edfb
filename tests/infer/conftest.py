"""Fixtures shared with the other engine tests (defined in tests/infer_fixtures.py)."""

from infer_fixtures import clip_path, mesh_sp8, model_dir, sharded_engine, single_engine, small_model, tokenizer, vq_dir  # noqa: F401  (fixtures)
