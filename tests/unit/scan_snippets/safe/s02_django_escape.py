from django.http import HttpResponse
from django.utils.html import escape


def search_view(request):
    term = escape(request.GET.get("q", ""))
    banner = "<h2>Results for " + term + "</h2>"
    return HttpResponse(banner)
