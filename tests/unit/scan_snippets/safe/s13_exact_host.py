from urllib.parse import urlparse

TRUSTED_HOSTS = {"partner-bank.com", "www.partner-bank.com"}


def is_partner_link(link):
    return urlparse(link).hostname in TRUSTED_HOSTS
