"""Local mode: the ``crypto-etl`` CLI, the CoinGecko replay server and the local warehouse."""
