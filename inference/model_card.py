"""A generated model card (MODEL_CARD.md) for a model shipped out of its workdir.

Written into every bundle and CTranslate2 export from what the training run recorded:
the data, the recipe and its config, the command and library versions
(run_info.json), the BLEU of each scored split (results.json) and the parameters.
"""
import json

from etils import epath

CARD_FILE = "MODEL_CARD.md"


def _read_json(path: epath.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def facts(workdir: str, config, *, parameters: int, step: int | None,
          weights: str) -> dict:
  """What the card says, as a dict (also stored in a bundle's bundle.json).

  `config` is the workdir's (`layout.read_config`); run_info.json and results.json
  are read from the workdir.
  """
  info = _read_json(epath.Path(workdir) / "run_info.json") or {}
  results = _read_json(epath.Path(workdir) / "results.json") or []
  return {
      "data": {"dataset": config.data.dataset, "source_lang": config.data.source_lang,
               "target_lang": config.data.target_lang,
               "vocab_size": config.data.vocab_size},
      "training": {"command": " ".join(info.get("argv", [])) or None,
                   "steps": config.num_train_steps, "step": step,
                   "versions": {k: info[k] for k in ("python", "jax", "flax", "optax",
                                                     "orbax") if k in info},
                   "devices": info.get("devices"), "platform": info.get("platform")},
      "model": {"parameters": parameters, "weights": weights,
                "layers": [config.model.num_encoder_layers,
                           config.model.num_decoder_layers],
                "emb_dim": config.model.emb_dim, "num_heads": config.model.num_heads,
                "mlp_dim": config.model.mlp_dim},
      "decode": config.decode.to_dict() if "decode" in config else {},
      "results": [{k: r.get(k) for k in ("data", "step", "averaged_checkpoints",
                                         "bleu_lc_tok", "sacrebleu", "chrf",
                                         "sentences", "beam_size", "alpha")}
                  for r in results],
  }


def render(card: dict, artifact: str) -> str:
  """MODEL_CARD.md for `artifact` (e.g. 'bundle, int8 weights')."""
  data, training, model = card["data"], card["training"], card["model"]
  lines = [
      f"# {data['source_lang']}→{data['target_lang']} Transformer ({artifact})", "",
      f"- Data: {data['dataset']} ({data['source_lang']}–{data['target_lang']}), a"
      f" SentencePiece vocabulary of {data['vocab_size']} pieces.",
      f"- Model: {model['parameters']:,} parameters, {model['layers'][0]}+"
      f"{model['layers'][1]} layers, width {model['emb_dim']}, {model['num_heads']}"
      f" heads, feed-forward {model['mlp_dim']}; weights {model['weights']}.",
      f"- Trained with: `{training['command'] or 'not recorded'}`, "
      f"{training['steps']} steps (parameters of step {training['step']}), on"
      f" {training['devices']} {training['platform']} device(s); versions "
      + (", ".join(f"{k} {v}" for k, v in training["versions"].items())
         or "not recorded") + ".",
      f"- Decoding defaults: {card['decode'] or 'the library defaults'}.", "",
  ]
  if card["results"]:
    lines += ["| split | step | checkpoints averaged | bleu_lc_tok | sacreBLEU | chrF |"
              " sentences |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {r['step']} | {r['averaged_checkpoints']} |"
              f" {r['bleu_lc_tok']} | {r['sacrebleu']} | {r['chrf']} |"
              f" {r['sentences']} |" for r in card["results"]]
    lines += ["", "Scores are those of the training run's own evaluation (float32"
              " weights), not of this artifact."]
  else:
    lines.append("No scores: the run was not evaluated (no results.json).")
  return "\n".join(lines) + "\n"
