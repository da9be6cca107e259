"""What a trained model is used for, on its likelihood: anomaly scores (score.py) and inpainting /
denoising (restore.py). ``FlowVAE.score``, ``inpaint`` and ``denoise`` call these; they work on a model
passed in and import neither the model nor the engine (the CLI's glue is engine/cli_uses.py)."""
