"""A tokenizer built locally and saved beside a Qwen2 config loads back as the same tokenizer (engine.hf_load)."""

from __future__ import annotations

from engine.envs import tiny_agent
from engine.hf_load import load_tokenizer, saved_as_plain_backend

TEXT = "SELECT SUM(x) FROM t WHERE x > 123 AND y < 4567; -- 89"


def test_local_plain_tokenizer_beside_a_qwen2_config_keeps_its_splits(tmp_path):
    from transformers import Qwen2Config

    tok = tiny_agent.build_tokenizer([TEXT] * 40, vocab_size=400, split_digits=True)
    Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert saved_as_plain_backend(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert [back.decode([i]) for i in back("x > 123")["input_ids"]][-3:] == ["1", "2", "3"]  # digits stay split
    assert back.chat_template == tok.chat_template and back.eos_token == tok.eos_token


def test_other_tokenizers_go_through_autotokenizer(tmp_path):
    from engine.trainer import tiny

    tok = tiny.build_tokenizer()
    tok.save_pretrained(tmp_path)
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"TokenizersBackend"', '"LlamaTokenizer"'))
    assert not saved_as_plain_backend(tmp_path)
    assert not saved_as_plain_backend(tmp_path / "missing")
