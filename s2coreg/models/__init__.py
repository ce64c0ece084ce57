"""The networks (``superpoint``, ``superglue``) and the checkpoint format they share
(``checkpoints``: the config stored inside, a mismatched file refused in one line)."""
