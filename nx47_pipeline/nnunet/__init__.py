"""nnU-Net v2 inside NX47: raw-data export (:mod:`.export`), import of trained
result folders as model bundles (:mod:`.bundle`) and the nnU-Net predictor
(:mod:`.predictor`).  nnunetv2 is optional (``pip install nx47[nnunet]``) and
imported only where a function needs it."""
