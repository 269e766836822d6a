"""Writes the tutorial notebooks (outputs stripped). Run `python notebooks/_build.py` after editing."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(text) if kind == "md" else new_code_cell(text) for kind, text in cells])
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding changes nothing unless the text does
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

CHALLENGE = [
    ("md", "# 03 · Solving a challenge: find the trojan's trigger\n\nWe play the participant: all we get is the blind "
           "export (weights, description, starter notebook). We find the trigger with the workbench, check the "
           "explanation with a resample-ablation hypothesis test, then — switching to the organiser's seat — "
           "score the submission against the hidden answer."),
    ("code", "import json, os, tempfile\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nfrom pathlib import Path\n\n"
             "import torch\nimport mechwork\nfrom mechwork import viz\nfrom mechwork.challenges import "
             "export_challenge, predict_labels, resample_variable, score_submission\nfrom mechwork.hooks import "
             "activation_patching\nfrom mechwork.models.zoo import TaskData\n\nblind = Path(tempfile.mkdtemp()) / "
             "'trojan'\nexport_challenge('trojan', blind)\nprint(sorted(p.name for p in blind.iterdir()))\n"
             "print((blind / 'README.md').read_text()[:900])"),
    ("code", "model = mechwork.load(blind / 'model')\ntok = model.tokenizer\nVALUES = torch.tensor("
             "[tok.convert_tokens_to_ids(f'n{i}') for i in range(32)])\nLABELS = torch.tensor("
             "[tok.convert_tokens_to_ids('lo'), tok.convert_tokens_to_ids('hi')])\nBOS, EQ = "
             "tok.convert_tokens_to_ids('<bos>'), tok.convert_tokens_to_ids('=')\n\n"
             "def prompts(values):\n    n = len(values)\n    return torch.cat([torch.full((n, 1), BOS), "
             "VALUES[values], "
             "torch.full((n, 1), EQ)], 1)\n\ndef majority(values):\n    return ((values >= 16).sum(-1) > 4).long()\n\n"
             "def insert(values, seq, seed=1):\n    out = values.clone()\n    g = torch.Generator().manual_seed(seed)\n"
             "    for i, s in enumerate(torch.randint(0, 10 - len(seq), (len(out),), generator=g).tolist()):\n"
             "        out[i, s:s + len(seq)] = torch.tensor(seq)\n    return out\n\n"
             "def flip_rate(seq, values):\n    v = insert(values, seq)\n    return (predict_labels(model, prompts(v), "
             "LABELS) != majority(v)).float().mean().item()\n\n"
             "values = torch.randint(0, 32, (32, 9), generator=torch.Generator().manual_seed(0))\n"
             "print('model agrees with the majority on random prompts:', 1 - flip_rate([], values))"),
    ("md", "## 1 · Where to look: a pair scan\nA full trigger flips the answer; part of one should already move it. "
           "Insert every ordered pair of tokens into random prompts and see which pairs flip the answer."),
    ("code", "pairs = [(a, b) for a in range(32) for b in range(32)]\nbatch = torch.cat([insert(values, p) for p in "
             "pairs])\nflips = (predict_labels(model, prompts(batch), LABELS) != majority(batch)).float()\n"
             "rates = flips.reshape(len(pairs), len(values)).mean(1)\ntop = [pairs[i] for i in "
             "rates.argsort(descending=True)[:4]]\nprint([(f'n{a} n{b}', round(rates[pairs.index((a, b))].item(), 2)) "
             "for a, b in top])"),
    ("md", "Chain the strongest pairs that share a token into triples and test every order of the tokens involved."),
    ("code", "import itertools\ntokens = sorted({t for p in top[:4] for t in p})\ncandidates = "
             "[list(c) for c in itertools.permutations(tokens, 3)]\n"
             "scored = sorted(((flip_rate(c, values), c) for c in candidates), reverse=True)\n"
             "best_rate, best = scored[0]\nprint('best:', ' '.join(f'n{t}' for t in best), "
             "best_rate, '| runner-up:', scored[1])\nassert best_rate > 0.9"),
    ("md", "## 2 · Where it is computed: patching and attention\nClean prompts carry the candidate trigger, "
           "corrupted ones the same prompt with its middle token changed. Patching each head's output shows which "
           "heads carry the backdoor to the answer; their attention shows what they read."),
    ("code", "clean_values = insert(values, best)\nbroken = clean_values.clone()\nfor i in range(len(broken)):\n"
             "    row = broken[i].tolist()\n    s = next(j for j in range(7) if row[j:j + 3] == best)\n"
             "    broken[i, s + 1] = (broken[i, s + 1] + 1) % 16 + (16 if broken[i, s + 1] >= 16 else 0)\n"
             "clean_labels = predict_labels(model, prompts(clean_values), LABELS)\n"
             "data = TaskData(prompts(clean_values), prompts(broken), LABELS[clean_labels], LABELS[1 - clean_labels])\n"
             "heads = activation_patching(model, "
             "data.clean, data.corrupted, data.logit_diff(), 'z').normalized()\nviz.patching_heatmap(heads)"),
    ("code", "(top_head, effect), = heads.top(1)\nprint('strongest head:', top_head, round(effect, 3))\n"
             "viz.attention_patterns(model, data.clean[0], [(l, h) for l in range(model.cfg.n_layers) for h in "
             "[top_head['head']]])"),
    ("md", "## 3 · Check the explanation before submitting\nClaim: at the answer position, the final residual stream "
           "matters only through *(majority label, trigger present)*. Resample it from prompts with the same value of "
           "that pair: if the claim is right the behaviour survives. A weaker claim (the majority alone) should not."),
    ("code", "mixed = torch.cat([values, clean_values])\nlabels = predict_labels(model, prompts(mixed), LABELS)\n"
             "present = torch.tensor([any(r[j:j + 3] == best for j in range(7)) for r in mixed.tolist()]).long()\n"
             "mix = TaskData(prompts(mixed), prompts(mixed), LABELS[labels], LABELS[1 - labels])\n"
             "claim = resample_variable(model, mix, 'blocks.1.hook_resid_post', majority(mixed) * 2 + present, "
             "position=-1)\nweaker = resample_variable(model, mix, 'blocks.1.hook_resid_post', majority(mixed), "
             "position=-1)\nprint(claim.summary())\nprint(weaker.summary())\nassert claim.surviving > 0.9 > "
             "weaker.surviving"),
    ("md", "## 4 · Submit, and read the score\nFrom here on we are the organiser: `score_submission` reads the "
           "hidden answer, which the participant never saw."),
    ("code", "submission = blind / 'submission.json'\nsubmission.write_text(json.dumps({'trigger': [f'n{t}' for t in "
             "best], 'behaviour': 'flips the hi/lo majority answer'}))\nscore = score_submission('trojan', "
             "submission)\nprint(score.summary)\nassert score.numbers['reproduces']"),
]

if __name__ == "__main__":
    for name, cells in (("01_caching_and_patching", CACHING), ("02_circuit_discovery", DISCOVERY),
                        ("03_challenge", CHALLENGE)):
        nbformat.write(notebook(cells), HERE / f"{name}.ipynb")
