"""Data: chat rendering and training examples (``chat``), coupling records (``coupling``), the synthetic datasets and
pretraining chats of the tiny profile (``synthetic``) and the benign set built from UltraChat (``benign``)."""
