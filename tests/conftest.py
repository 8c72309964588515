"""Shared test setup: everything offline, deterministic and small."""

import os

import pytest

# No test may reach the network: huggingface_hub and open_clip then fail fast on a cache miss.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3-compatible server (moto_server) with the bucket ``raymmft``; stopped afterwards."""
    from s3_server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()
