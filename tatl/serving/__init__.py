"""`tatl serve`: a local web app and REST API to see a run's predictions, correct them and teach the model.

Everything the server reads or writes lives in the image folder FOLDER (given by --data):

    FOLDER/<id>.jpg|.jpeg|.png|.bmp                   the images (uploads are added here); <id> is the file stem
    FOLDER/corrections/<id>_attribute_<name>.png      the official corrections: one per attribute a person edited
                                                      or confirmed (no other), 8-bit {0, 255}, the image's original
                                                      size (ISIC 2018 Task 2 format)
    FOLDER/corrections/.versions/<id>/<time>-<model>/ every saved version: its masks and version.json (version
                                                      number, UTC time, the model version it corrected, which
                                                      attributes were edited and which confirmed); hidden,
                                                      so FOLDER stays a flat dataset (images + one mask per
                                                      attribute) that `tatl check-data` and `tatl finetune` read
    FOLDER/.tatl-serve/predictions/<model>/           what `tatl predict` writes, per model version and image:
                                                      <id>_attribute_<name>.png, <id>_segmentation.png,
                                                      <id>_abnormal.png, probabilities/<id>_attribute_<name>.png,
                                                      and <id>.json (that image's predictions.json record plus its
                                                      uncertainty); predictions are never overwritten by corrections
    FOLDER/.tatl-serve/display/<id>.jpg               the downscaled copy the browser shows (longest side 2048)
    FOLDER/.tatl-serve/thumbnails/<id>.jpg            gallery thumbnails (longest side 256)
    FOLDER/.tatl-serve/states/<id>.json               the correction version number, whether it is approved, and
                                                      whether each saved attribute's mask is non-empty
    FOLDER/.tatl-serve/drafts/<id>.json               autosaved unsaved edits: the version they started from, the
                                                      edited masks and where the tools went (PNG data URLs), the
                                                      confirmed attributes
    FOLDER/.tatl-serve/models.json, models/run_<n>/   the model versions (the served RUN is "base") and the
                                                      fine-tuned runs of the Teach button (models/run_<n>.steps/<k>/:
                                                      the runs of its earlier steps)
    FOLDER/.tatl-serve/teach/run_<n>/step_<k>/        what each step of that fine-tuning trained on
    FOLDER/.tatl-serve/server.lock                    held by the one server of FOLDER

Every file is written through tatl.io (a temporary name, then a rename), so a server killed during a save leaves
the old file or the new one, never half of one. Modules: folder (every path above, `ServedFolder`), security (ids,
tokens, hosts, uploads), store (images, states, corrections, versions, drafts), masks (masks between the page and
the server), predictions (predicting and reading predictions), gallery (its rows and the next image), models
(versions), training (the fine-tuning steps in a subprocess), services (what the routes share, injected), routes/
(the API: images, predictions, corrections, teaching), docs (/docs), app (assembles them), server (the lock, the
port, uvicorn); static/ holds the page.
"""
