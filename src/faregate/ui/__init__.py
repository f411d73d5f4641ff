"""The admin web UI under /ui: server-rendered pages (Jinja2), one CSS and one JS file, charts
drawn as SVG on the server. Every change goes through the same services as the admin API."""
