"""Load Lambda: bulk-load a processed snapshot file into Snowflake ``CRYPTO_DATA``.

``sql`` builds every statement (pure), ``loader`` runs the load sequence on a connection,
``config``/``connection`` read credentials and connect, ``handler`` wires the Lambda event.
"""
