"""Training and evaluation: pairs and splits by place (``dataset``), the shared loop and
resumable campaigns (``loop``), the two training scripts (``superpoint``, ``superglue``), the
matching benchmark (``evaluate``)."""
