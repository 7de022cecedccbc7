"""pgolf: a Snakemake pipeline for OpenAI's Parameter Golf challenge.

Every stage of the DAG (docs, tokenizer, shards, train, quantize, compress, eval, aggregate) is a
module here; `workflow/scripts/` holds thin entry points that call into it.
"""

# The challenge's artifact limit: code bytes + compressed model bytes, decimal.
ARTIFACT_LIMIT_BYTES = 16_000_000
