# expect: WAL101
import jinja2


def render_signature(name, title):
    tpl = jinja2.Template("<footer>{{ name }}, {{ title }}</footer>", autoescape=False)  # <- here
    return tpl.render(name=name, title=title)
