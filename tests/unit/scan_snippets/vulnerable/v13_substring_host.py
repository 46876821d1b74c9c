# expect: WAL108
from urllib.parse import urlparse


def is_partner_link(link):
    host = urlparse(link).netloc
    return "partner-bank.com" in host  # <- here
