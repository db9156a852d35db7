"""The REST API of `tatl serve`, one router per concern: images (gallery, uploads, files, review state),
corrections (masks, versions, drafts), predictions, teaching (fine-tuning and model versions)."""
