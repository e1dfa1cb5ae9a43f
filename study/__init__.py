"""Orchestration: nightly runner, objective glue, gate, promoter, exports, vault."""
