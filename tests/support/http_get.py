"""An ordinary http.client program, with no rdmamsg in it: GET the URL in
argv[1] and print the status, the body's length and its sha256."""
import hashlib
import http.client
import sys
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
conn.request("GET", url.path)
resp = conn.getresponse()
body = resp.read()
conn.close()
print(resp.status, len(body), hashlib.sha256(body).hexdigest())
