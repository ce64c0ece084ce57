"""The shipped checkpoints, installed as package data (``s2coreg.model_checkpoints``);
``python -m s2coreg.models.checkpoints`` (or ``s2coreg-checkpoints``) says how each was trained."""
