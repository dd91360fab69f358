"""Chart repository chores for the tests, done by Helm's own engine (PyPI's `helm-python-sdk`):

    chart_tool.py package CHART_DIR OUT_DIR          # prints the .tgz path
    chart_tool.py index DIR BASE_URL                 # writes DIR/index.yaml
    chart_tool.py push TGZ oci://HOST:PORT/PATH USER PASSWORD   # plain HTTP; USER - : no login
"""

import os
import sys
import tempfile

from helm_python import chart as hchart
from helm_python import registry


def main(argv):
    if argv[:1] == ["package"] and len(argv) == 3:
        print(hchart.package(argv[1], destination=argv[2]))
    elif argv[:1] == ["index"] and len(argv) == 3:
        registry.repo_index_generate(argv[1], base_url=argv[2])
    elif argv[:1] == ["push"] and len(argv) == 5:
        tgz, remote, user, password = argv[1:]
        host = remote[len("oci://"):].split("/")[0]
        with tempfile.TemporaryDirectory() as tmp:
            client = registry.RegistryClient(plain_http=True,
                                             credentials_file=os.path.join(tmp, "config.json"))
            if user != "-":
                client.login(host, user, password, plain_http=True)
            print(client.push(tgz, remote, plain_http=True))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
