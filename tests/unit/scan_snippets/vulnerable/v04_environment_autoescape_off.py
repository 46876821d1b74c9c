# expect: B701
import jinja2

loader = jinja2.FileSystemLoader("views")
env = jinja2.Environment(loader=loader, autoescape=False)  # <- here


def render_profile(user):
    return env.get_template("profile.html").render(user=user)
