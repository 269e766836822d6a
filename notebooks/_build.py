"""Writes the tutorial notebooks (outputs stripped). Run `python notebooks/_build.py` after editing."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


CACHING = [
    ("md", "# 01 · Caching and patching on the zoo\n\n`zoo:induction` is a two-layer model whose mechanism we "
           "planted: a previous-token head in layer 0 and an induction head (layer 1, head 0) that K-composes with "
           "it. This notebook finds both with the hooks layer, offline, and checks what it finds against the "
           "planted answer."),
    ("code", "import os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\n\nimport torch\nimport mechwork\n"
             "from mechwork import viz\nfrom mechwork.hooks import activation_patching, attribution_patching, "
             "cache_activations, path_patching\n\nmodel = mechwork.load('zoo:induction')\n"
             "entry = mechwork.zoo.get_entry('induction')\ndata = entry.task.data(32, seed=0)\n"
             "print(entry.task.description)\nprint(model.to_str_tokens(data.clean[0]))"),
    ("md", "## Caching\nHook names are TransformerLens module paths; patterns select many at once, and a misspelt "
           "name gets a suggestion instead of silence."),
    ("code", "logits, cache = cache_activations(model, data.clean, 'blocks.*.attn.hook_pattern')\n"
             "{name: tuple(t.shape) for name, t in cache.items()}"),
    ("code", "try:\n    cache_activations(model, data.clean, 'blocks.0.attn.hook_patern')\n"
             "except mechwork.hooks.UnknownHookError as e:\n    print(e)"),
    ("md", "## Activation patching\nPatch each head's output from the clean run into the corrupted run. "
           "Normalised: 1 means the patch alone restores the clean answer."),
    ("code", "metric = data.logit_diff()\nheads = activation_patching(model, data.clean, data.corrupted, metric, "
             "'z').normalized()\nheads"),
    ("code", "viz.patching_heatmap(heads)"),
    ("code", "# the planted induction head is the one that restores the answer\n"
             "(top, value), = heads.top(1)\nassert (top['layer'], top['head']) == (1, 0), top\nvalue"),
    ("md", "By position: the induction head matters only at the final position, where the answer is read."),
    ("code", "by_pos = activation_patching(model, data.clean, data.corrupted, metric, 'z', per_position=True)"
             ".normalized()\nviz.patching_heatmap(by_pos, rows='head', cols='pos', select={'layer': 1})"),
    ("md", "## Attention patterns\nThe previous-token head attends one position back; the induction head attends "
           "to the token after the earlier copy of the current token."),
    ("code", "viz.attention_patterns(model, data.clean[0], [(0, 0), (1, 0)])"),
    ("md", "## Attribution patching\nOne forward and one backward pass estimate the whole sweep; compare with the "
           "exact values."),
    ("code", "approx = attribution_patching(model, data.clean, data.corrupted, metric, 'z').normalized()\n"
             "corr = torch.corrcoef(torch.stack([approx.values.flatten(), heads.values.flatten()]))[0, 1]\n"
             "print(f'correlation with exact patching: {corr:.3f}')"),
    ("md", "## Path patching\nSend the clean output of the previous-token head only into the induction head's "
           "key: K-composition means this path alone carries much of the effect."),
    ("code", "prev = next(f'blocks.0.attn.head.{h}' for h in range(4) if f'blocks.0.attn.head.{h}' in "
             "entry.ground_truth().nodes)\nclean_v, corrupt_v = heads.clean_value, heads.corrupted_value\n"
             "via_key = path_patching(model, data.clean, data.corrupted, metric, prev, "
             "'blocks.1.attn.head.0.k')\nprint(prev, 'via the key of 1.0:', "
             "(via_key - corrupt_v) / (clean_v - corrupt_v))"),
]

DISCOVERY = [
    ("md", "# 02 · Circuit discovery, scored against a planted circuit\n\nEvery method runs on the same "
           "computational graph (input, heads with q/k/v inputs, MLPs, logits), is scored by faithfulness (MIB's "
           "CPR/CMD) and, because the zoo knows its answer, by ROC AUC against the planted edges."),
    ("code", "import os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\n\nimport mechwork\nfrom mechwork import viz\n"
             "from mechwork.discovery import Circuit, find_circuit, methods, verify\n"
             "from mechwork.reports import write_report\n\nmodel = mechwork.load('zoo:induction')\n"
             "entry = mechwork.zoo.get_entry('induction')\ndata = entry.task.data(32, seed=0)\n"
             "truth = entry.ground_truth()\nprint([m.name for m in methods()])\nsorted(truth.edges)"),
    ("md", "## ACDC\nIterative pruning from the logits backwards; its circuit should be exactly the planted one."),
    ("code", "acdc = find_circuit(model, data, 'acdc', truth=truth, task_name='induction')\nacdc"),
    ("code", "assert set(acdc.selected) >= truth.edges\nviz.circuit_graph(acdc)"),
    ("md", "## Gradient methods and exact patching\nEAP and EAP-IG score every edge in a few passes; `exact` "
           "patches each edge and is the reference they approximate."),
    ("code", "found = {'acdc': acdc}\nfor name in ('exact', 'eap', 'eap-ig'):\n"
             "    found[name] = find_circuit(model, data, name, truth=truth, task_name='induction')\n"
             "{name: round(c.ground_truth['edge_roc_auc'], 3) for name, c in found.items()}"),
    ("code", "viz.faithfulness_curves(found)"),
    ("code", "viz.roc_curves(found)"),
    ("md", "## Share it\nA circuit file carries its prompts and the model's weight hash, so anyone can re-check "
           "it; the HTML report opens offline."),
    ("code", "acdc.save('induction-acdc.json')\nwrite_report(acdc, 'induction-acdc.html', tokenizer=model.tokenizer)\n"
             "check = verify(Circuit.load('induction-acdc.json'))\nassert check.ok\nprint(check.message())"),
    ("code", "import pathlib\nfor f in ('induction-acdc.json', 'induction-acdc.html'):\n"
             "    pathlib.Path(f).unlink()"),
]

if __name__ == "__main__":
    for name, cells in (("01_caching_and_patching", CACHING), ("02_circuit_discovery", DISCOVERY)):
        nbformat.write(notebook(cells), HERE / f"{name}.ipynb")
