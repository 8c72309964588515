"""Shared test setup: everything offline, deterministic and small."""

import os

# No test may reach the network: huggingface_hub and open_clip then fail fast on a cache miss.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
