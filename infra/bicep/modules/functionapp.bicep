// The gateway: a Linux Function App on the Flex Consumption plan (scales to zero, per-second billing) running
// Python from a package in a blob container, with the user-assigned identity for everything. Every app setting
// the gateway needs on Azure is set here, in `appSettings`; tests/infra/test_bicep.py checks these names against
// gateway.config.SETTINGS. No setting holds a secret: GATEWAY_API_KEYS is a Key Vault reference.

@description('Name of the Function App (also its host name: <name>.azurewebsites.net).')
param name string

@description('Name of the Flex Consumption plan (one app per plan).')
param planName string

@description('Azure region (must offer Flex Consumption).')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('Tag azd uses to find the app it deploys the `gateway` service to.')
param serviceName string = 'gateway'

@description('Python version of the Flex Consumption runtime.')
param pythonVersion string = '3.13'

@description('Memory per instance in MB; CPU and network scale with it.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most HTTP requests one instance serves at once (scaleAndConcurrency.triggers.http.perInstanceConcurrency); main.bicep sets it from the measured default for the instance size.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int

@description('Most instances the app scales out to (40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Always-ready instances for the HTTP group (0 = scale to zero, pay nothing at rest; 1+ removes cold starts).')
@minValue(0)
param alwaysReadyHttpInstances int = 0

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Storage account for AzureWebJobsStorage (identity-based).')
param storageAccountName string

@description('Blob endpoint of that account.')
param storageBlobEndpoint string

@description('Container holding the deployment package.')
param deploymentContainerName string

@description('Table for breaker and health state (GATEWAY_STATE_TABLE).')
param stateTableName string

@description('Container for async results (GATEWAY_RESULTS_CONTAINER).')
param resultsContainerName string

@description('Fully qualified Service Bus namespace for completions.')
param serviceBusFullyQualifiedNamespace string

@description('Topic completions are published to (GATEWAY_COMPLETIONS_ENTITY).')
param completionsTopicName string

@description('Days the app keeps async results and orchestration history (GATEWAY_PURGE_AFTER_DAYS).')
@minValue(1)
param purgeAfterDays int = 7

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Versionless URI of the Key Vault secret holding the gateway client keys.')
param apiKeysSecretUri string

@description('GATEWAY_BACKEND_<n> settings (name -> connection string), built by main.bicep from its backend parameters.')
param backendSettings object

@description('Extra GATEWAY_* tuning settings (e.g. GATEWAY_STRATEGY). The app rejects unknown names at start-up; the settings above win over these.')
param gatewaySettings object = {}

@description('Microsoft Entra ID tenant whose tokens are accepted (GATEWAY_ENTRA_TENANT_ID); empty: keys only.')
param entraTenantId string = ''

@description('Accepted token audiences, comma separated (GATEWAY_ENTRA_AUDIENCE).')
param entraAudience string = ''

// The settings the gateway and its platform read on Azure. Keep the names literal: the contract test reads them.
var appSettings = {
  // Functions host and Durable Functions storage, through the identity (shared keys are disabled).
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // DefaultAzureCredential (backends with usemi=true, Key Vault references inside backend strings).
  AZURE_CLIENT_ID: identityClientId
  // Telemetry; the component accepts Microsoft Entra-authenticated telemetry only.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
  // Inbound client keys, resolved by App Service from Key Vault with keyVaultReferenceIdentity.
  GATEWAY_API_KEYS: '@Microsoft.KeyVault(SecretUri=${apiKeysSecretUri})'
  // Backend pool state and the async path.
  GATEWAY_STATE_TABLE: stateTableName
  GATEWAY_RESULTS_CONTAINER: resultsContainerName
  GATEWAY_COMPLETIONS_ENTITY: completionsTopicName
  COMPLETIONS_SERVICEBUS__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
  COMPLETIONS_SERVICEBUS__clientId: identityClientId
  GATEWAY_PURGE_AFTER_DAYS: string(purgeAfterDays)
  // Inbound Microsoft Entra ID tokens (callers app:<client id> / user:<object id>); empty: gateway keys only.
  GATEWAY_ENTRA_TENANT_ID: entraTenantId
  GATEWAY_ENTRA_AUDIENCE: entraAudience
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    // Key Vault references are resolved with the user-assigned identity, not a system-assigned one.
    keyVaultReferenceIdentity: identityId
    // Flex Consumption refuses the classic site properties (ftpsState, linuxFxVersion, use32BitWorkerProcess, ...):
    // functionAppConfig replaces them. tests/infra/test_flex.py keeps them out.
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: (alwaysReadyHttpInstances > 0) ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
        // One instance holds many streams: the gateway waits on I/O (docs/capacity.md).
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: union(gatewaySettings, backendSettings, appSettings)
  }
}

@description('Name of the Function App.')
output name string = app.name

@description('Base URL of the gateway (use as azure_endpoint, or <url>/v1 as an OpenAI base_url).')
output url string = 'https://${app.properties.defaultHostName}'
