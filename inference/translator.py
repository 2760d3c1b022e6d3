"""A frozen model ready to translate: parameters, tokenizer and a compiled decoder."""
from collections.abc import Sequence
import dataclasses

from flax import nnx

from data import tokenizer as tokenizer_lib
from inference import restore
from inference import translate
from inference.translate import DecodeSettings, Translation
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner
from storage import layout


def inference_partitioner(config) -> Partitioner:
  """Every local device on the batch axis, laid out by the run's logical-axis rules."""
  return Partitioner(mesh_lib.create_mesh((-1, 1, 1)), config.logical_axis_rules)


@dataclasses.dataclass(frozen=True)
class Translator:
  """Translates lists of sentences with one set of frozen parameters."""
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer: tokenizer_lib.Tokenizer
  decoder: translate.Decoder
  step: int  # The checkpoint step the parameters come from.
  batch_tokens: int = 4096  # Source tokens per batch, padding included.

  @classmethod
  def from_workdir(cls, workdir: str, *, partitioner: Partitioner | None = None,
                   step: int | None = None, checkpoint_dir: str | None = None,
                   dtype: str | None = None, settings: DecodeSettings | None = None,
                   nbest: int = 1, batch_tokens: int = 4096) -> "Translator":
    """Restores `step` (default: the latest) of WORKDIR/checkpoints or `checkpoint_dir`.

    The partitioner defaults to `inference_partitioner` of the run's config; decode
    settings default to the run's `config.decode`.
    """
    config = layout.read_config(workdir)
    if partitioner is None:
      partitioner = inference_partitioner(config)
    if settings is None:
      settings = DecodeSettings.from_config(config.get("decode"))
    model = restore.restore_params(workdir, partitioner, step=step,
                                   checkpoint_dir=checkpoint_dir, dtype=dtype)
    decoder = translate.Decoder(partitioner, settings,
                                max_len=model.model_config.max_len, nbest=nbest)
    return cls(graphdef=model.graphdef, params=model.params,
               tokenizer=layout.load_tokenizer(workdir), decoder=decoder,
               step=model.step, batch_tokens=batch_tokens)

  def translate(self, texts: Sequence[str], *, name: str = "<input>",
                first_line: int = 1, progress: bool = False) -> list[Translation]:
    """One Translation per text, in order; `name` labels warnings (file:line).

    `first_line` numbers `texts[0]` in `name` when translating a file in chunks.
    """
    return translate.translate(
        texts, self.tokenizer, self.decoder.bind(self.graphdef, self.params),
        max_len=self.decoder.max_len, batch_tokens=self.batch_tokens, name=name,
        first_line=first_line, progress=progress)
