import jinja2

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader("views"),
    autoescape=jinja2.select_autoescape(["html", "xml"]),
)


def render_profile(user):
    return env.get_template("profile.html").render(user=user)
