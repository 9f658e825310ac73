"""lm-eval ``process_results`` of the held-out perplexity task: per document, the summed log-likelihood with
its token count (the model tokenizer's, counted when the task's data was written), byte count."""


def process_results(doc, results):
    (loglikelihood,) = results
    nbytes = len(doc["text"].encode("utf-8"))
    return {"token_perplexity": (loglikelihood, doc["tokens"]), "byte_perplexity": (loglikelihood, nbytes),
            "bits_per_byte": (loglikelihood, nbytes)}
