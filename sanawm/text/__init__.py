"""Prompt encoding (build side) and prompt-embedding files (read by the torch-free runtime).

Only ``sanawm.text.store`` and ``sanawm.text.cache`` are torch-free; import the encoders from their modules
(``sanawm.text.stage1``, ``sanawm.text.refiner_text``) so that importing this package pulls in nothing heavy.
"""
