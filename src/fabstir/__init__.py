"""fabstir: peer-to-peer LLM inference marketplace SDK."""
