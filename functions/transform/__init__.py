"""Transform Lambda: raw CoinGecko pages -> the processed CSV.gz (pure logic in ``transform.py``,
file encoding in ``csv_gz.py``, I/O wiring in ``handler.py``)."""
