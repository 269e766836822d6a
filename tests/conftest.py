import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import mechwork  # noqa: E402
from mechwork.models._tokenizer import word_level_tokenizer  # noqa: E402

# `make test` runs the suite on two pytest-xdist workers (one file per worker at a time): one torch thread
# each then, since most tests run tiny models where a second thread only adds contention
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def induction():
    return mechwork.load("zoo:induction")


@pytest.fixture(scope="session")
def lookup():
    return mechwork.load("zoo:lookup")


@pytest.fixture(scope="session")
def induction_data():
    return mechwork.zoo.get_entry("induction").task.data(8, seed=3)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random 3-layer GPT-2 with non-zero biases and LayerNorm parameters, saved as a local checkpoint."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=48, n_layer=3, n_head=4, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    word_level_tokenizer([f"w{i}" for i in range(40)], "w0").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return mechwork.load(tiny_dir)


@pytest.fixture(scope="session")
def tiny_pair():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 40, (5, 9), generator=g)
    corrupted = torch.randint(0, 40, (5, 9), generator=g)
    return clean, corrupted


@pytest.fixture(scope="session")
def tiny_metric(tiny_pair):
    clean, _ = tiny_pair
    return mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The headless Chromium that the browser and static-export tests drive. Without one they are skipped
    with one line saying how to get it, except under CI (``CI`` set), where that is a failure."""
    from .browser import chromium

    path = chromium()
    if path is None:
        why = ("no headless Chromium on PATH: `make test` installs Debian's `chromium` where it can (root or "
               "passwordless sudo, with apt-get); elsewhere `sudo apt-get install chromium` enables these tests")
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI is set, so this is a failure, not a skip)")
        pytest.skip(why)
    return path
