"""Pretrain our BERT (masked LM) or our GPT (next token) from random weights on unlabeled reviews.

    python src/pretrain.py objective=mlm
    python src/pretrain.py objective=clm trainer.max_steps=500 data.max_docs=2000
    python src/train.py model=bert_scratch model.net.checkpoint=logs/pretrain/runs/<run>/export
"""

from bertgpt.entries import pretrain

if __name__ == "__main__":
    pretrain()
