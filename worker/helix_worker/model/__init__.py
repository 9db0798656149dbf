"""The served model: config, checkpoint reading, tokenizer, a random checkpoint and a dense reference."""
