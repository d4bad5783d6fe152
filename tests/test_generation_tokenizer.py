"""`flashxlstm generate --checkpoint DIR` on a directory with a tokenizer.json: BOS prepended, text streamed,
the same tokens as `model.generate`."""
import io

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders

from flashxlstm import xLSTMLarge, xLSTMLargeConfig
from flashxlstm.cli.main import main
from flashxlstm.generation.tokenizer import TextStreamer, generate_text, load_tokenizer

WORDS = ["<bos>", "<pad>", "<eos>"] + [f"w{i}" for i in range(26)]


def write_tokenizer(directory):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<bos>", "<pad>", "<eos>"])
    tok.save(str(directory / "tokenizer.json"))


def checkpoint(gen, directory):
    model = xLSTMLarge(xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=1, vocab_size=len(WORDS), chunk_size=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(directory, for_transformers=False)
    write_tokenizer(directory)
    return model.eval()


def test_generate_text_prepends_bos_and_streams_what_generate_returns(gen, tmp_path):
    model = checkpoint(gen, tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.encode("w3 w4", bos_token_id=0) == [0, 6, 7]
    out = io.StringIO()
    text = generate_text(model, tok, "w3 w4", max_new_tokens=7, out=out, eos_token_id=None)
    ids = model.generate(torch.tensor([[0, 6, 7]]), max_new_tokens=7)[0, 3:].tolist()
    assert text == tok.decode(ids) and out.getvalue() == text + "\n"


def test_cli_generate_uses_the_tokenizer(gen, tmp_path, capsys):
    model = checkpoint(gen, tmp_path)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "w1 w2", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    ids = model.generate(torch.tensor([[0, 4, 5]]), max_new_tokens=5, eos_token_id=2)[0, 3:].tolist()
    if 2 in ids:
        ids = ids[: ids.index(2)]
    assert printed == "w1 w2" + load_tokenizer(tmp_path).decode(ids) + "\n"


def test_streamer_holds_back_incomplete_characters():
    class Bytes:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    out = io.StringIO()
    s = TextStreamer(Bytes(), out)
    s.put(torch.tensor([65]))  # the prompt: skipped
    for b in "é!".encode():
        s.put(torch.tensor([b]))
        assert "\ufffd" not in out.getvalue()
    s.end()
    assert out.getvalue() == "é!\n"
