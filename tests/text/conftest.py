import pytest


@pytest.fixture(scope="session")
def tiny_tok():
    from sanawm.text.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_g2():
    from sanawm.text.tiny import tiny_gemma2

    return tiny_gemma2()
