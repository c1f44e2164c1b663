"""The 4-rank torchrun suite (launched once by `make test-dist4`): the shared fixtures of
tests/torchrun_fixtures.py."""

from torchrun_fixtures import distributed, parallel, shared_tmp_path  # noqa: F401
