"""OoD detection: post-hoc scores and their registry (``scores``), metrics, NegLabel mining
(``neglabel``) over word corpora (``corpus``), and image/text embeddings (``embed``).

Pure functions of tensors; nothing here imports Ray or the built-in world. Import the submodules
(``raymmft.ood.corpus`` needs no torch, so the config can validate WordNet categories with it).
"""
