# expect: WAL101
from jinja2 import Template

CARD = Template("<div class='bio'>{{ bio }}</div>")  # <- here


def bio_card(bio_text):
    return CARD.render(bio=bio_text)
