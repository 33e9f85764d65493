"""The streamed export reads an official ``.pt`` as well as a ``.safetensors`` file: tensor by tensor from a
memory map, through ``torch.load(weights_only=True)``; a checkpoint carrying code is refused by name."""

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from sanawm.config import tiny  # noqa: E402
from sanawm.export.families.generator_streamed import ghost_engine, weight_source  # noqa: E402
from sanawm.export.job import ExportInputError  # noqa: E402
from sanawm.export.scale import write_random_checkpoint  # noqa: E402


@pytest.mark.parametrize("nest", ["flat", "model.", "generator"])
def test_pt_source_reads_the_same_tensors_as_safetensors(nest, tmp_path):
    st = tmp_path / "g.safetensors"
    write_random_checkpoint(tiny(), st)
    sd = load_file(str(st))
    if nest == "model.":  # official files may nest the generator's keys under "model."
        sd = {"model." + k: v for k, v in sd.items()}
    obj = {"generator": sd, "step": 3} if nest == "generator" else sd  # a training checkpoint's layout
    pt = tmp_path / "g.pt"
    torch.save(obj, pt)
    a, b = ghost_engine(tiny(), "float32"), ghost_engine(tiny(), "float32")
    ref, src = weight_source(st, a), weight_source(pt, b)
    assert set(src.params) == set(ref.params)
    for name in ref.params:
        torch.testing.assert_close(src.load(name), ref.load(name), rtol=0, atol=0)


def test_pt_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pt = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, pt)
    with pytest.raises(ExportInputError, match="contains code"):
        weight_source(pt, ghost_engine(tiny(), "float32"))
