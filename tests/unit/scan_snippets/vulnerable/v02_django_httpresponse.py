# expect: WAL102
from django.http import HttpResponse


def search_view(request):
    term = request.GET.get("q", "")
    banner = "<h2>Results for " + term + "</h2>"
    return HttpResponse(banner)  # <- here
