"""Sentiment by prompting, no fine-tuning: a chat decoder zero- or k-shot, or a masked LM's cloze.

    python src/prompt.py                                              # SmolLM2-135M-Instruct, zero-shot, held-out reviews
    python src/prompt.py shots=4 data.val_size=500                    # 4 demonstrations, on 500 held-out reviews
    python src/prompt.py method=cloze checkpoint=logs/pretrain/runs/<run>/export   # our MLM-pretrained BERT
"""

from bertgpt.entries import prompt

if __name__ == "__main__":
    prompt()
